"""Chat-style generate-and-critique sessions: `unimodal chat` (a REPL) and `unimodal serve` (a web UI).

- `syntax`: the command syntax, one line -> a `Request`
- `settings`: `ChatSettings` (seed, steps, cfg, N, ...), `ServeLimits`
- `store`: a session folder, complete after every turn
- `engine`: `ChatEngine`, which runs requests through the unified model; `replay`
- `repl`: the terminal loop; `backend`: `ChatBackend` for the web UI; `webapp`: the Gradio layer
"""
