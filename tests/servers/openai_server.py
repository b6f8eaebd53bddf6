"""A real OpenAI-compatible server for the tests: ``transformers serve`` (part of
transformers) on a local model, plus the bearer-key check that vLLM's ``--api-key`` and
llama.cpp's ``--api-key`` make (``transformers serve`` has none): every ``/v1`` request without
``Authorization: Bearer KEY`` gets 401.

    python tests/servers/openai_server.py MODEL_DIR PORT [KEY]

Prints ``ready`` on stdout once the model is loaded and the port answers.
"""

import sys


def main() -> None:
    model, port = sys.argv[1], int(sys.argv[2])
    key = sys.argv[3] if len(sys.argv) > 3 else ""
    from fastapi.responses import JSONResponse
    from transformers.cli import serve as serve_cli
    from transformers.cli.serving import server

    build = server.build_server

    def build_with_key(*args, **kwargs):
        app = build(*args, **kwargs)

        @app.middleware("http")
        async def check_key(request, call_next):
            if key and request.url.path.startswith("/v1") and \
                    request.headers.get("authorization") != f"Bearer {key}":
                return JSONResponse({"error": {"message": "Incorrect API key provided",
                                               "type": "invalid_request_error"}},
                                    status_code=401)
            return await call_next(request)

        return app

    server.build_server = build_with_key
    serve = serve_cli.Serve(force_model=model, host="127.0.0.1", port=port, device="cpu",
                            non_blocking=True)
    import time
    import urllib.request

    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    print("ready", flush=True)
    serve._thread.join()


if __name__ == "__main__":
    main()
