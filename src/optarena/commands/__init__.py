"""One module per CLI command; ``optarena.cli`` registers them on the typer app."""
