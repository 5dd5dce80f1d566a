"""Built-in synfiqa plugins, registered through the `synfiqa` entry points like any other."""
