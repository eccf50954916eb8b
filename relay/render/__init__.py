"""Render and sign: a change and a webhook become the exact request, in Jinja2's sandbox."""
