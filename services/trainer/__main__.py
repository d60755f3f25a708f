"""``python -m services.trainer`` runs the ``skyserve-train`` command line."""

from services.trainer.cli import app

if __name__ == "__main__":
    app(prog_name="skyserve-train")
