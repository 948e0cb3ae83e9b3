-- hallhub outbox, schema version 4: the case ledger behind 一次一评 (CONTRACTS §15, tightening §6a).
-- One row per (case number, channel): the levels of the first two ratings that counted and when the
-- case was first and last counted. It is read and written in the same transaction as each rating and
-- outlives the records: record retention and quota shedding never touch it; only rows whose last
-- counted rating is older than national.case_history_days are pruned. It keys by case number and
-- channel, never by anything about the citizen.
CREATE TABLE case_ledger (
    case_no      TEXT    NOT NULL,
    channel      TEXT    NOT NULL,
    first_level  INTEGER NOT NULL,
    second_level INTEGER,
    first_at     TEXT    NOT NULL,
    last_at      TEXT    NOT NULL,
    PRIMARY KEY (case_no, channel)
) WITHOUT ROWID;
CREATE INDEX case_ledger_age ON case_ledger (last_at);

-- Seeded from the evaluations still in the store, by the rule the hub applies from now on: a rating
-- counts unless it was flagged repeat or suspect without a national record (a suspect press that was
-- sent as a national record before this version counted for the platform, so it counts here too).
INSERT INTO case_ledger (case_no, channel, first_level, second_level, first_at, last_at)
SELECT case_no, channel,
       max(CASE WHEN n = 1 THEN level END),
       max(CASE WHEN n = 2 THEN level END),
       min(created_at), max(created_at)
FROM (
    SELECT case_no,
           json_extract(body, '$.data.channel') AS channel,
           json_extract(body, '$.data.level') AS level,
           created_at,
           row_number() OVER (
               PARTITION BY case_no, json_extract(body, '$.data.channel') ORDER BY seq
           ) AS n
    FROM records
    WHERE kind = 'evaluation' AND case_no IS NOT NULL AND case_no <> ''
      AND json_type(body, '$.data.channel') = 'text'
      AND json_type(body, '$.data.level') = 'integer'
      AND json_extract(body, '$.data.level') BETWEEN 1 AND 5
      AND (json_type(body, '$.data.national') = 'object'
           OR NOT EXISTS (
               SELECT 1 FROM json_each(body, '$.data.flags') WHERE value IN ('repeat', 'suspect')
           ))
)
GROUP BY case_no, channel;
