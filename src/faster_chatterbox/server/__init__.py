"""An OpenAI-compatible speech server for a loaded ChatterboxTTS (extra: pip install 'faster-chatterbox[server]').

    from faster_chatterbox.server import ServerOptions, create_app
    app = create_app(tts, ServerOptions(voices_dir="voices"))     # then: uvicorn.run(app)

`faster-chatterbox serve` does this from the command line (main.py): it loads and warms the model, then
serves HTTP (app.py) and optionally Wyoming (wyoming.py) until SIGTERM, which drains in-flight requests.
`serve --ray` serves the same app from N replicas on Ray Serve (ray_serve.py, extra [ray]).
"""

from .app import create_app
from .options import ServerOptions

__all__ = ["create_app", "ServerOptions"]
