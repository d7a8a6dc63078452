"""The employee map inside the worker: attendance code -> EmployeeRecord fields (a JSON dict).

Kept as plain dicts so the live feed and Faust's changelog recovery (which decodes JSON) put
the same type in the table. Records are validated on the way in; an invalid record from the
employees topic is logged and ignored (the previous mapping for that code stays).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from schemas.codec import decode
from schemas.employee import EmployeeRecord
from tapstream.errors import ContractError

logger = logging.getLogger(__name__)


def apply_employee_change(table: MutableMapping[str, Any], key: bytes | None, value: bytes | None) -> None:
    """Apply one message of the employees topic: upsert a record, or delete on a tombstone."""
    if key is None:
        logger.error("employees topic: message without a key (attendance code) ignored")
        return
    code = key.decode("utf-8", "replace")
    if value is None:
        table.pop(code, None)
        return
    try:
        record = decode(EmployeeRecord, value)
    except ContractError as exc:
        logger.error("employees topic: invalid record for code %r ignored: %s", code, exc)
        return
    if record.attendance_code != code:
        logger.error("employees topic: key %r carries a record for %r; ignored", code, record.attendance_code)
        return
    table[code] = record.model_dump(mode="json")


def employee_from_table(table: Any, code: str) -> EmployeeRecord | None:
    """The employee for ``code``, or None when unknown."""
    value = table.get(code)
    if value is None:
        return None
    return EmployeeRecord.model_validate(value)
