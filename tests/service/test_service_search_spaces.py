"""service.api.routes.search_spaces: the presets a job can start from."""


def test_search_spaces(api):
    listed = api.call("GET", "/v1/search-spaces").json()
    names = [s["name"] for s in listed["data"]]
    assert "shakespeare-tiny" in names and listed["count"] == len(names)
    one = api.call("GET", "/v1/search-spaces/shakespeare-tiny").json()
    assert one["spec"]["name"] == "shakespeare-tiny" and one["spec"]["tuning"]["strategy"] == "paper"


def test_unknown_search_space_is_a_404_that_points_to_the_list(api):
    r = api.call("GET", "/v1/search-spaces/nope")
    assert r.status_code == 404
    assert r.json() == {"detail": "no search space 'nope'; see GET /v1/search-spaces"}
