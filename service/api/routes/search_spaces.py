"""/v1/search-spaces: the presets a job can start from."""

# No `from __future__ import annotations`: route annotations use limits from the settings in scope.

import logging

from fastapi import APIRouter, HTTPException

from slwtune.errors import SpecError
from slwtune.spec import list_presets, parse_spec, preset_data

from service.api.deps import CurrentPrincipal
from service.api.handlers import ERRORS
from service.errors import SearchSpaceNotFound
from service.schemas import SearchSpacePublic, SearchSpacesPublic, SearchSpaceSummary
from service.settings import Settings

log = logging.getLogger("slwtune.service")


def router(settings: Settings) -> APIRouter:
    r = APIRouter(prefix="/v1/search-spaces", tags=["search-spaces"])

    @r.get("", response_model=SearchSpacesPublic, responses=ERRORS)
    def read_search_spaces(principal: CurrentPrincipal) -> SearchSpacesPublic:
        """The presets a job can start from."""
        data = []
        for name in list_presets():
            try:
                spec = parse_spec(preset_data(name))
            except SpecError as exc:  # a broken preset file must not hide the others
                log.warning("preset %s is invalid: %s", name, exc)
                continue
            data.append(SearchSpaceSummary(name=name, model_preset=spec.model.preset,
                                           train_tokens=spec.budget.train_tokens, strategy=spec.tuning.strategy))
        return SearchSpacesPublic(data=data, count=len(data))

    @r.get("/{name}", response_model=SearchSpacePublic, responses=ERRORS)
    def read_search_space(name: str, principal: CurrentPrincipal) -> SearchSpacePublic:
        """A preset's full spec, defaults filled in."""
        if name not in list_presets():
            raise SearchSpaceNotFound(name)
        try:
            spec = parse_spec(preset_data(name))
        except SpecError as exc:  # the server's own file is broken: not the caller's mistake
            raise HTTPException(500, detail=f"preset {name!r} is invalid: {exc}") from None
        return SearchSpacePublic(name=name, spec=spec.to_dict())

    return r
