-- 0033 stand-in: this number is the console log's (branch wt-log, 0033_console_log.sql), made
-- here only so that 0034 follows 1..N without a gap. When merging, take wt-log's file instead.
INSERT INTO relay.migrations (version, name) VALUES (33, 'console_log');
