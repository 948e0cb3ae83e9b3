-- hallhub outbox, schema version 3: pending records counted by kind as they come and go, so that
-- /metrics, /healthz, /v1/status and hub/state cost the same at any backlog (a GROUP BY over a
-- million pending records took ~0.5 s). Triggers keep it exact for every writer, the CLI included.
CREATE TABLE pending_counts (
    kind TEXT PRIMARY KEY,
    n    INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO pending_counts (kind, n) SELECT kind, count(*) FROM records WHERE state = 0 GROUP BY kind;

CREATE TRIGGER pending_counts_insert AFTER INSERT ON records WHEN new.state = 0
BEGIN
    INSERT INTO pending_counts (kind, n) VALUES (new.kind, 1) ON CONFLICT (kind) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER pending_counts_leave AFTER UPDATE OF state ON records
WHEN old.state = 0 AND new.state <> 0
BEGIN
    UPDATE pending_counts SET n = n - 1 WHERE kind = old.kind;
END;

CREATE TRIGGER pending_counts_return AFTER UPDATE OF state ON records
WHEN old.state <> 0 AND new.state = 0
BEGIN
    INSERT INTO pending_counts (kind, n) VALUES (new.kind, 1) ON CONFLICT (kind) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER pending_counts_delete AFTER DELETE ON records WHEN old.state = 0
BEGIN
    UPDATE pending_counts SET n = n - 1 WHERE kind = old.kind;
END;
