"""The viewer's part of ``xrayviewer --self-test``: can this installation show an image?

A frozen app can start, load its models and still show a black canvas (Pillow's Tk bridge
``PIL._tkinter_finder`` is loaded by name and is easy to leave out of a bundle). This opens
an invisible Tk root the way the viewer does, puts an image on a canvas through
``ImageTk.PhotoImage`` and reads a pixel back, and says whether drag and drop is available.
"""

from __future__ import annotations

import os
import sys

import numpy as np


def display_available() -> bool:
    """A window can be opened: always on Windows/macOS, on X11/Wayland when a display is set."""
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def check_gui() -> str:
    """Raise if the viewer could not show an image here; return a short note otherwise."""
    if not display_available():
        return "viewer not checked (no display)"
    import tkinter as tk

    from PIL import Image, ImageTk

    from .app import create_root

    root = create_root()
    try:
        root.withdraw()
        dnd = "drag and drop" if hasattr(root, "drop_target_register") else "no drag and drop"
        pixels = np.zeros((8, 12), np.uint8)
        pixels[2, 5] = 200
        photo = ImageTk.PhotoImage(Image.fromarray(pixels), master=root)
        canvas = tk.Canvas(root, width=12, height=8)
        canvas.create_image(0, 0, image=photo, anchor="nw")
        root.update_idletasks()
        back = np.asarray(ImageTk.getimage(photo).convert("L"))  # read back through Tk
        if back.shape != pixels.shape or int(back[2, 5]) != 200 or int(back[0, 0]) != 0:
            raise RuntimeError("the image shown by Tk has the wrong pixels")
        return f"viewer ok (Tk {root.tk.call('info', 'patchlevel')}, image display, {dnd})"
    finally:
        root.destroy()
