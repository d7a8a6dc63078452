-- Daily timesheets for HR, recomputed by the PostgreSQL sink whenever a punch of that
-- employee's work day arrives (a late punch included). Rules: sinks/timesheets.py; schema
-- documented in docs/timesheets.md.
CREATE TABLE IF NOT EXISTS timesheets (
    employee_id     text        NOT NULL,
    work_day        date        NOT NULL,             -- local day, shifted by the day boundary
    timezone        text        NOT NULL,             -- zone of the punches' devices
    first_in        timestamptz,                      -- first check-in of the day (UTC instant)
    last_out        timestamptz,                      -- last check-out that closed an interval
    worked_seconds  integer     NOT NULL,             -- sum of paired in -> out intervals
    punches         integer     NOT NULL,
    pairs           integer     NOT NULL,
    flags           text[]      NOT NULL DEFAULT '{}', -- single_punch, missing_check_out, ...
    computed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (employee_id, work_day)
);

CREATE INDEX IF NOT EXISTS timesheets_day ON timesheets (work_day);
