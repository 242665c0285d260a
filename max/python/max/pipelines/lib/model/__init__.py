"""The architecture contract: `SupportedArchitecture` (what an `arch.py` declares), the
`PipelineModel` an architecture's `model.py` subclasses (sizing, building, loading and the
forward pass; `VisionLanguageModel` adds images), the registry of architectures, the decoder
config reader, images as model inputs, and the start-up memory plan.
"""
