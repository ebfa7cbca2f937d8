"""The Tkinter desktop viewer. The only package allowed to import tkinter; nothing imports it
except the CLI's launcher, lazily."""
