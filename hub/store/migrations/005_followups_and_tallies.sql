-- hallhub outbox, schema version 5: the bad-review follow-up loop (CONTRACTS §11) and the daily
-- satisfaction tallies (§14). Both are written in the same transaction as the records they follow
-- (an evaluation, a bad-review alert, a follow-up step), so they can never disagree with them, and
-- both outlive the records: delivered records are pruned after days, the tallies are kept 400 days.

-- One row per bad-review alert: its deadlines and the steps taken (times in RFC 3339 UTC).
CREATE TABLE followups (
    alert_id         TEXT PRIMARY KEY,
    evaluation_id    TEXT NOT NULL,
    raised_at        TEXT NOT NULL,
    day              TEXT NOT NULL,      -- the bad review's date in the node's time zone
    window           TEXT,
    staff_id         TEXT,
    case_no          TEXT,
    item_code        TEXT,
    channel          TEXT,
    callback_due     TEXT NOT NULL,
    rectify_due      TEXT NOT NULL,
    callback         TEXT,               -- the callback step's record data (JSON), once taken
    rectify          TEXT,               -- the rectify step's record data (JSON), once taken
    callback_overdue INTEGER NOT NULL DEFAULT 0,  -- 1 once its callback_overdue alert is stored
    rectify_overdue  INTEGER NOT NULL DEFAULT 0,
    closed           INTEGER NOT NULL DEFAULT 0   -- 1 when nothing more is due
) WITHOUT ROWID;
CREATE INDEX followups_open ON followups (callback_due) WHERE closed = 0;
CREATE INDEX followups_day ON followups (day);

-- Ratings and follow-up steps per local day and key: dim is window, staff, item or channel (every
-- rating has a channel, so the channel rows also give the day's total). key '' stands for none.
CREATE TABLE tallies (
    day               TEXT    NOT NULL,
    dim               TEXT    NOT NULL,
    key               TEXT    NOT NULL,
    l1                INTEGER NOT NULL DEFAULT 0,
    l2                INTEGER NOT NULL DEFAULT 0,
    l3                INTEGER NOT NULL DEFAULT 0,
    l4                INTEGER NOT NULL DEFAULT 0,
    l5                INTEGER NOT NULL DEFAULT 0,
    excluded          INTEGER NOT NULL DEFAULT 0,
    callbacks         INTEGER NOT NULL DEFAULT 0,
    callbacks_on_time INTEGER NOT NULL DEFAULT 0,
    rectified         INTEGER NOT NULL DEFAULT 0,
    rectified_on_time INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dim, day, key)
) WITHOUT ROWID;
