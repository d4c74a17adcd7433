"""``llmkit serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the inference engine, with a chat page.

``build_app(ServeConfig(...), load)`` is the ASGI app (see ``app.py``);
``protocol.py`` holds the wire format, ``state.py`` loading and admission,
``metrics.py`` the Prometheus metrics, ``errors.py`` the OpenAI error shape.
"""
from llmkit.serve.app import build_app
from llmkit.serve.state import ServeConfig, ServerState

__all__ = ["ServeConfig", "ServerState", "build_app"]
