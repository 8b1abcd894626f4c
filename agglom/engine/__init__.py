"""Engine strategies behind one interface; the loop never branches on which one runs."""
from agglom.engine.base import ENGINES, Engine, build_engine, engine_class, register_engine

__all__ = ["ENGINES", "Engine", "build_engine", "engine_class", "register_engine"]
