"""`spac-serve`: an OpenAI-compatible HTTP server over one warm `Generator`.

Needs the ``serve`` extra (Starlette, uvicorn, jinja2); the runtime does not.

    engine = Engine(Generator.from_bundle("demo-bundle"))
    app = build_app(engine, "demo-bundle")      # an ASGI app: run it with uvicorn
"""
