"""The model-folder downloader behind ``perro-pastor download`` (docs/downloader.md): a catalog of
known models, the Hugging Face Hub's API, resumable verified fetches, and the folder they land in.

    from perro_pastor.downloader.download import download, list_models
"""
