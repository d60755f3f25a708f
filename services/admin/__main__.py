"""``python -m services.admin`` is ``skyserve-admin`` (images without console scripts)."""

from services.admin.cli import main

main()
