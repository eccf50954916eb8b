"""``relay console``: a web application, served by relay itself, where a person signed in as a
PostgreSQL role sees the webhooks and deliveries and acts on them with that role's rights
(docs/console.md). Nothing else in relay imports it; it uses the store, the database's only
door, like the command line."""
