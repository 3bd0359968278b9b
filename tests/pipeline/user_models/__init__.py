"""Model functions as users write them (`model: tests.pipeline.user_models.<module>:<function>`)."""
