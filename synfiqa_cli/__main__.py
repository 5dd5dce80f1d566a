from synfiqa_cli.main import cli

cli()
