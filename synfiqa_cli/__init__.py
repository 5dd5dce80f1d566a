"""The `synfiqa` command line."""
