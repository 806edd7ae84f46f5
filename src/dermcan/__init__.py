"""dermcan: clinical photographs of skin lesions crawled from the web and annotated by algorithm."""

__version__ = "0.1.0"
