"""LoRAs, switched per request: reading their files (``files``), matching their layers to the export's LoRA sites
(``sites``), the factors fed to the graphs (``factors``) and AUTOMATIC1111's prompt tags (``tags``). Torch-free."""
