-- Timesheet recomputation reads an employee's punches of one work day by device (local) time
-- (sinks/postgres_timesheets.py). Without this index each batch read the whole history of
-- every employee it touched: the cost of a batch grew with the table.
CREATE INDEX IF NOT EXISTS attendance_records_employee_device_time
    ON attendance_records (employee_id, device_time);
