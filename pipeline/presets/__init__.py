"""Named starting configs (`--preset NAME`): YAML files of PipelineConfig values beside this file.

`default` is PipelineConfig's own defaults. A preset sits under a config file and flags,
so `--preset quality --epochs 5` changes only the epochs.
"""
