// Bundled by tests/support/browser.py with esbuild into uppy.js (an IIFE).
import Uppy from '@uppy/core';
import Tus from '@uppy/tus';

window.Uppy = Uppy;
window.Tus = Tus;
