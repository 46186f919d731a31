"""The Gradio page of `unimodal serve`: a thin layer over `ChatBackend`.

A chat pane (messages and /commands), a gallery (each image with its judge scores and the model's
caption of it), controls for seed / steps / guidance / N, and an image upload for questions. All
model events share one queue slot (`concurrency_id="model"`, limit 1), so simultaneous requests
wait their turn instead of failing; beyond `ServeLimits.max_queue` waiting requests Gradio refuses
new ones with a "queue full" message. Fonts are the system's, so the page needs no network.
"""
from __future__ import annotations

import os
import re

from unimodal.chat.backend import WARN, ChatBackend, Reply

INTRO = """### unimodal: draw, critique, ask
Type a message, or **/image PROMPT** (or "draw ...") to draw; **/best N** redraws the last prompt as
best-of-N judged by the model itself; **/critique** scores the last image against its prompt; upload an
image and type a question to ask about it; **/help** lists everything."""

CSS = """
#gallery .caption-label { white-space: pre-line; font-size: 0.8em; max-width: 100%; }
#status:empty { display: none; }
"""


# Every ASCII punctuation character; CommonMark lets each be backslash-escaped to stand for itself.
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def as_text(text: str) -> str:
    """Markdown that shows `text` literally. The chat pane and the status line render Markdown and
    then HTML (sanitised, but a prompt's <img> tag still became an image and cut the echo short),
    and every message in them holds user text: prompts, captions, file names."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def _progress_callback(progress):
    return lambda message: progress(None, desc=message)


def build_app(backend: ChatBackend):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    lim, defaults = backend.limits, backend.default_settings()

    def outputs_of(cid: str, reply: Reply):
        # Gallery captions are plain text in the page already; only Markdown panes need escaping.
        gallery = [(item.image, item.caption) for item in reply.gallery]
        messages = [{**m, "content": as_text(m["content"])} for m in reply.messages]
        status = f"{WARN}{as_text(reply.error)}" if reply.error else ""
        return cid, messages, gallery, status

    def on_send(cid, message, upload, seed, steps, guidance, n, progress=gr.Progress()):
        cid = cid or backend.new_conversation()
        reply = backend.send(cid, message, upload, seed=seed, num_inference_steps=steps, guidance_scale=guidance, n=n,
                             progress=_progress_callback(progress))
        return (*outputs_of(cid, reply), "", None)

    def on_draw(cid, message, seed, steps, guidance, n, progress=gr.Progress()):
        cid = cid or backend.new_conversation()
        reply = backend.draw(cid, message, seed=seed, num_inference_steps=steps, guidance_scale=guidance, n=n,
                             progress=_progress_callback(progress))
        return (*outputs_of(cid, reply), "" if reply.error is None else message)

    def on_critique(cid, progress=gr.Progress()):
        cid = cid or backend.new_conversation()
        return outputs_of(cid, backend.critique(cid, progress=_progress_callback(progress)))

    with gr.Blocks(title="unimodal chat") as app:
        cid = gr.State(None)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", elem_id="chat", height=420, feedback_options=None,
                                  latex_delimiters=[])    # "$" in a prompt is text, not a formula
                with gr.Row():
                    message = gr.Textbox(show_label=False, elem_id="message", scale=5, max_lines=4, autofocus=True,
                                         placeholder=f"message, /image PROMPT, /best N, /critique (at most {lim.max_prompt_chars} characters)")
                    send = gr.Button("Send", variant="primary", elem_id="send", scale=1, min_width=80)
                with gr.Row():
                    draw = gr.Button("Draw (best of N)", elem_id="draw")
                    critique = gr.Button("Critique last image", elem_id="critique")
                upload = gr.File(label=f"Image to ask about (at most {lim.max_upload_bytes // 2**20} MiB)",
                                 file_types=["image"], type="filepath", elem_id="upload")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Images: judge score and critique", elem_id="gallery", columns=2,
                                     format="png", object_fit="contain", height=420, interactive=False)
                with gr.Accordion("Settings", open=True):
                    seed = gr.Number(defaults.seed, label="seed", precision=0, minimum=0, maximum=lim.max_seed, elem_id="seed")
                    steps = gr.Slider(1, lim.max_num_inference_steps, defaults.num_inference_steps, step=1, label="steps",
                                      elem_id="steps")
                    guidance = gr.Slider(1, lim.max_guidance_scale, defaults.guidance_scale, step=0.1,
                                         label="guidance (1 = off)", elem_id="guidance")
                    n = gr.Slider(1, lim.max_n, defaults.n, step=1, label="N (candidates, the best kept)", elem_id="n")
        model_events = dict(concurrency_limit=1, concurrency_id="model")
        send_outputs = [cid, chat, gallery, status, message, upload]
        send_inputs = [cid, message, upload, seed, steps, guidance, n]
        send.click(on_send, send_inputs, send_outputs, api_name="send", **model_events)
        message.submit(on_send, send_inputs, send_outputs, api_visibility="private", **model_events)
        draw.click(on_draw, [cid, message, seed, steps, guidance, n], [cid, chat, gallery, status, message],
                   api_name="draw", **model_events)
        critique.click(on_critique, [cid], [cid, chat, gallery, status], api_name="critique", **model_events)
    return app


def launch(backend: ChatBackend, host: str = "127.0.0.1", port: int = 7860, *, quiet: bool = False) -> None:
    """Serve until interrupted (blocks)."""
    import gradio as gr

    app = build_app(backend)
    app.queue(max_size=backend.limits.max_queue, default_concurrency_limit=1)
    system_fonts = ["ui-sans-serif", "system-ui", "sans-serif"]
    theme = gr.themes.Default(font=system_fonts, font_mono=["ui-monospace", "monospace"])
    app.launch(server_name=host, server_port=port, max_file_size=backend.limits.max_upload_bytes, ssr_mode=False,
               share=False, quiet=quiet, theme=theme, css=CSS, footer_links=["api"])
