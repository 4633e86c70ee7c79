"""The Gradio side of the app: what `app.py` needs from Gradio beyond laying out its components.

- `gradio_state`: what the app reads of Gradio's own state (sessions, uploads, the queue's waiting and
  running jobs), in one place, since Gradio offers no public way to ask;
- `checks`: a request's values checked before it is queued, and read into settings when it runs;
- `outcomes`: each request's outcome as a person meets it (errors that stay, the status line, one log
  line per refusal, progress that stops work whose client has gone);
- `components`: what both tabs lay out alike (photo input, settings, 3D view, downloads and details).

The rules themselves (limits, refusals, file lifetimes) live in `diffnphr.serving`, which never imports
Gradio; this package is the only one that does.
"""
