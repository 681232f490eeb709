"""freshkb: keep a customer-service knowledge base fresh and answerable.

One installed package. The repository keeps a folder per step of the data's way at its top
(core, loaders, validation, embeddings, screening, store, flows, serving); each is linked here
as a sub-package, so that nothing with a generic name lands at the top of site-packages. This
package's own code is the entry points on top of them: the CLI and the HTTP API.
"""
