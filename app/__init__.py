"""The Gradio demo over saved pipeline folders."""
