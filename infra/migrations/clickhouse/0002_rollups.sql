-- Rollups for `tapstream report` and for data teams: plain views over the fact table, no
-- stored state. {database} is substituted by the migration runner. docs/analytics.md explains
-- each column and why these are views rather than materialized aggregates: an insert-time
-- aggregate counts every re-sent and corrected row again, and attendance_events only collapses
-- them at merge time. Every view reads attendance_events_latest, which applies FINAL.
--
-- Days and hours are the device's local ones: device_time is the device's wall clock, so
-- toDate/toHour of it need no time zone (ClickHouse cannot take a per-row zone anyway).
-- Filtering these views on `day` reaches device_time, so old months are never read.

-- One row per event_id: the latest insert (a replay with a corrected employee mapping wins).
-- Every copy of an event lies in one partition (the partition key is device_time, part of the
-- event id), so FINAL may collapse each partition alone; that is what lets ClickHouse skip the
-- months a query's day filter excludes (with FINAL across partitions it reads them all).
CREATE VIEW IF NOT EXISTS {database}.attendance_events_latest AS
SELECT *
FROM {database}.attendance_events FINAL
SETTINGS do_not_merge_across_partitions_select_final = 1;

-- Per local day: who was there, how many punches, on how many devices.
CREATE VIEW IF NOT EXISTS {database}.daily_presence AS
SELECT
    toDate(device_time)      AS day,
    uniqExact(employee_id)   AS employees,
    count()                  AS punches,
    uniqExact(device_serial) AS devices
FROM {database}.attendance_events_latest
GROUP BY day;

-- Per local day and employee: the first arrival. Arrival states are check-in (0), break-in (3)
-- and overtime-in (4); 255 (the device has no state key) counts too, so on such devices the
-- first punch of the day is the arrival. Ties on the second go to the smallest device serial.
CREATE VIEW IF NOT EXISTS {database}.daily_arrivals AS
SELECT
    toDate(device_time)                                AS day,
    employee_id,
    min(device_time)                                   AS first_arrival,
    argMin(device_serial, (device_time, device_serial)) AS device_serial
FROM {database}.attendance_events_latest
WHERE punch_state IN (0, 3, 4, 255)
GROUP BY day, employee_id;

-- Per local day and hour: how many employees arrived (first arrival) in that hour.
CREATE VIEW IF NOT EXISTS {database}.arrivals_by_hour AS
SELECT
    day,
    toHour(first_arrival) AS hour,
    count()               AS arrivals
FROM {database}.daily_arrivals
GROUP BY day, hour;

-- Per local day and device: traffic, first and last punch (device wall clock), punches without
-- a state, and the longest delay between a punch and its receipt (a device that was offline
-- or whose clock runs fast shows here; negative = the device clock is ahead).
CREATE VIEW IF NOT EXISTS {database}.device_activity AS
SELECT
    toDate(device_time)                                AS day,
    device_serial,
    count()                                            AS punches,
    uniqExact(employee_id)                             AS employees,
    min(device_time)                                   AS first_punch,
    max(device_time)                                   AS last_punch,
    countIf(punch_state = 255)                         AS undefined_state,
    max(dateDiff('second', punch_time, received_at))   AS max_delay_s
FROM {database}.attendance_events_latest
GROUP BY day, device_serial;
