"""How a REST route reads a request, reaches the shared services and refuses: the bottom layer
every route package (accounts, billing, notify, rag, server, study) builds on.

`errors`: `ApiError`, the one refusal, and the one handler that answers it (and Starlette's own
404/405) as `{"error": {"code", "message", "field"?}}`; every code is in docs/errors.md.
`request`: the request readers (the JSON body within its limits, paging, path ids, storable
text). `services`: the typed `Services` the app builds in its lifespan, and `services(request)`.

It imports nothing of the project's at run time (the types of `Services` only when type
checking), so no package's arrow points upwards to reach it.
"""
