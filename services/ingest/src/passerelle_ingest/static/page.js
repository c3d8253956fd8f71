// Every page: when the server answered with an error, move the focus to it, so that
// keyboard and screen-reader users hear what went wrong first.
(() => {
  'use strict';
  const error = document.getElementById('error');
  if (error) {
    error.focus();
  }
})();
