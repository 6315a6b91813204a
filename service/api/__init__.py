"""The HTTP layer: dependencies (`deps`), exception handlers (`handlers`) and one router per resource."""
