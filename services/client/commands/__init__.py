"""The ``skyserve`` subcommands, grouped by what they work on; ``cli`` registers them."""
