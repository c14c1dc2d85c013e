// PrimeFlow — ponto de entrada do frontend (scripts clássicos, sem bundler).
(function main(window) {
  'use strict';
  var components = window.PrimeFlow.components;
  var API_URL = window.PRIMEFLOW_API_URL || 'http://localhost:4000';

  function render(projects) {
    var app = window.document.getElementById('app');
    app.innerHTML = '';
    app.appendChild(components.Header({ title: 'PrimeFlow', subtitle: 'Fluxos paralelos' }));
    app.appendChild(components.LegacyBanner());
    app.appendChild(components.ProjectList({ projects: projects }));
  }

  render([]);
  window
    .fetch(API_URL + '/projects')
    .then(function (res) { return res.json(); })
    .then(function (body) { render(body.data || []); })
    .catch(function (err) { console.warn('PrimeFlow: API indisponível', err); });
})(window);
