"""Running and operating Tapstream: the local stack, topics, migrations, tooling."""
