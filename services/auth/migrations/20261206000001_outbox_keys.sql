-- The outbox relay orders rows per topic and key (tributary_kit::outbox):
-- a failed row holds back only the later rows of its key.
CREATE INDEX outbox_keys ON outbox (destination, topic, key, id);
