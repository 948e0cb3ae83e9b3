-- hallhub outbox, schema version 2: windowed dedup entries also expire by the monotonic clock of the
-- boot that wrote them, so a wall-clock jump neither revives nor expires them early.
ALTER TABLE dedup ADD COLUMN expires_mono REAL;
ALTER TABLE dedup ADD COLUMN boot_id TEXT;
