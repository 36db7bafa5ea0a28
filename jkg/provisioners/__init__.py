"""Kernel provisioners shipped with jkg (registered as jupyter_client entry points).

jkg launches every kernel through jupyter_client, so these are ordinary
provisioners: any jupyter_client application can use them, and jkg needs no
code of its own to select one -- the kernelspec names it.  Importing this
package must stay light (no reactor, no txzmq): jupyter_client loads
provisioners in whatever process reads the kernelspec.
"""
