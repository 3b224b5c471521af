"""Cloud Native Buildpacks: descriptors, order, detect, build, env, launch metadata, export, cache, rebase."""
