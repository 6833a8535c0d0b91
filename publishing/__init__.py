"""Publishing: model cards and uploads of saved pipeline folders to the Hugging Face Hub."""
