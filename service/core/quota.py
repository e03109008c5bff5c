"""Per-tenant admission: queued + running jobs, and submissions per minute (a token bucket).

`admit` first writes the tenant's row, which takes its lock (a row lock on PostgreSQL, the write lock
on SQLite), so a tenant's concurrent submissions are checked and counted one after another and can
never overshoot together. The bucket refills by the database's clock.
"""

from __future__ import annotations

import math

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from alignahead.enums import ACTIVE
from service.core.db import db_time
from service.core.errors import TooMany
from service.core.models import Job, Tenant

ACTIVE_RETRY_AFTER_S = 30  # jobs end at their own pace; a polite interval to look again


def lock_tenant(session: Session, tenant_id: str) -> None:
    session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(bucket_at=Tenant.bucket_at)
        .execution_options(synchronize_session=False)
    )


def admit(session: Session, tenant_id: str, *, max_active: int, per_minute: float, count: int = 1) -> None:
    """Spend `count` submissions of the tenant's allowance (a study's jobs, all or none), or raise TooMany
    (429) naming the limit. Call after lock_tenant, in the transaction that stores the jobs."""
    active = session.scalar(select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))) or 0
    if active + count > max_active:
        adds = "" if count == 1 else f" and the study adds {count}"
        raise TooMany(
            f"this tenant already has {active} queued or running jobs{adds}, the limit (ALIGNAHEAD_MAX_ACTIVE_JOBS) "
            f"is {max_active}; wait for some to finish or cancel them",
            retry_after=ACTIVE_RETRY_AFTER_S,
        )
    now = db_time(session)
    tokens, at = session.execute(select(Tenant.bucket_tokens, Tenant.bucket_at).where(Tenant.id == tenant_id)).one()
    rate = per_minute / 60.0
    if tokens is None or at is None:
        tokens = per_minute
    else:
        tokens = min(per_minute, tokens + max(0.0, (now - at).total_seconds()) * rate)
    if tokens < count:
        what = "submissions" if count == 1 else f"submissions (a study of {count} jobs spends {count})"
        raise TooMany(
            f"too many {what}: the limit (ALIGNAHEAD_MAX_SUBMISSIONS_PER_MINUTE) is {per_minute:g} per minute "
            "for each tenant; retry after the time in the Retry-After header",
            retry_after=math.ceil((count - tokens) / rate),
        )
    session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(bucket_tokens=tokens - count, bucket_at=now)
        .execution_options(synchronize_session=False)
    )
