"""The package's version, in a module of its own: the loss file format records it, and the
package's ``__init__`` re-exports it, without either importing the other."""

__version__ = "0.1.0"
