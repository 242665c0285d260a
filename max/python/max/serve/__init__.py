"""The OpenAI-compatible server: HTTP front end (starlette + uvicorn) and engine process."""
