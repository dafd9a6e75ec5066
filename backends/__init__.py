"""portaft's built-in backends, registered through the `portaft` entry-point group."""
