"""The dependencies routes declare, as Annotated aliases: one place that says what a route may need."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from service.auth import current_tenant
from service.context import AppContext, get_context

Ctx = Annotated[AppContext, Depends(get_context)]
TenantId = Annotated[str, Depends(current_tenant)]
