-- Foundation: the device registry, the HR employee list, and the punch records HR reads.
-- Every statement is idempotent; the runner records applied versions in schema_migrations.

CREATE TABLE IF NOT EXISTS devices (
    serial      text PRIMARY KEY,
    name        text        NOT NULL DEFAULT '',
    kind        text        NOT NULL CHECK (kind IN ('pull', 'push')),
    address     text,
    port        integer     CHECK (port BETWEEN 1 AND 65535),
    comm_key    integer     NOT NULL DEFAULT 0,
    timezone    text        NOT NULL DEFAULT 'UTC',   -- IANA name, e.g. Asia/Dhaka
    site        text        NOT NULL DEFAULT '',
    enabled     boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS employees (
    attendance_code text PRIMARY KEY,                 -- the PIN enrolled on the terminals
    employee_id     text        NOT NULL,
    name            text        NOT NULL DEFAULT '',
    department      text        NOT NULL DEFAULT '',
    active          boolean     NOT NULL DEFAULT true,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per distinct punch (event_id is deterministic, see schemas/punch.py).
CREATE TABLE IF NOT EXISTS attendance_records (
    event_id         uuid PRIMARY KEY,
    device_serial    text        NOT NULL,
    user_code        text        NOT NULL,
    employee_id      text        NOT NULL,
    device_time      timestamp   NOT NULL,             -- device wall clock as read
    device_tz        text        NOT NULL,
    punch_time       timestamptz NOT NULL,             -- device_time resolved with device_tz
    punch_state      smallint    NOT NULL,
    verify_mode      integer     NOT NULL,
    work_code        text        NOT NULL DEFAULT '',
    source           text        NOT NULL,             -- pull-live | pull-poll | push
    received_at      timestamptz NOT NULL,
    raw              text        NOT NULL,
    source_partition integer     NOT NULL,             -- lineage: attendance.raw partition
    source_offset    bigint      NOT NULL,             -- lineage: offset in that partition
    ingested_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS attendance_records_employee_time
    ON attendance_records (employee_id, punch_time);
CREATE INDEX IF NOT EXISTS attendance_records_device_time
    ON attendance_records (device_serial, punch_time);
