-- hallhub outbox, schema version 1.
-- records.state: 0 pending, 1 delivered, 2 dead-lettered. body is the record's wire JSON (CONTRACTS §1).
CREATE TABLE records (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    kind          TEXT    NOT NULL,
    priority      INTEGER NOT NULL,
    created_at    TEXT    NOT NULL,
    device_id     TEXT,
    case_no       TEXT,
    body          TEXT    NOT NULL,
    sealed        TEXT,
    state         INTEGER NOT NULL DEFAULT 0,
    delivered_at  TEXT,
    delivered_via TEXT
);
CREATE INDEX records_pending ON records (priority, seq) WHERE state = 0;
CREATE INDEX records_pending_seq ON records (seq) WHERE state = 0;
CREATE INDEX records_kind ON records (kind, seq);
CREATE INDEX records_case ON records (case_no) WHERE case_no IS NOT NULL;
CREATE INDEX records_delivered ON records (delivered_at) WHERE state = 1;

-- (device, msg_id) of every device message stored, so that a retry is answered "duplicate".
CREATE TABLE dedup (
    device_id  TEXT NOT NULL,
    msg_id     TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    expires_at REAL,
    created_at REAL NOT NULL,
    PRIMARY KEY (device_id, msg_id)
) WITHOUT ROWID;

CREATE TABLE dead_letters (
    seq       INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL,
    kind      TEXT NOT NULL,
    reason    TEXT NOT NULL,
    failed_at TEXT NOT NULL
);

CREATE TABLE kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
