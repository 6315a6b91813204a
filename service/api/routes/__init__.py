"""One APIRouter per resource. Each module's `router(settings)` builds it: query limits
(page size, log lines) come from the settings and appear in the OpenAPI schema."""
